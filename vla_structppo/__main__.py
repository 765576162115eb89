"""``python -m vla_structppo`` (so ``accelerate launch -m vla_structppo train ...`` works)."""

from .cli import main

if __name__ == "__main__":
    main()
