"""python train.py +experiment=baseline scale=smoke data.root=... (see README.md)."""

from lightning_sota.run.train import main

if __name__ == "__main__":
    main()
