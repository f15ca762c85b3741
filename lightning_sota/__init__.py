"""fastbook chapter 7 as Lightning + Hydra experiments. From Python, a trained run classifies
images as fastai's ``load_learner(...).predict(...)`` does::

    from lightning_sota import load_run
    label, probs = load_run("outputs/runs/sota/<time>").predict("photo.jpg")
"""


def __getattr__(name: str):
    # Imported when asked for: `python -m lightning_sota.serve.predict` must not find the module
    # already imported by its own package.
    if name in ("load_run", "Predictor"):
        from .serve import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'lightning_sota' has no attribute {name!r}")
