"""The config: its folder and resolvers, the typed schema, and the rules that span several keys."""
