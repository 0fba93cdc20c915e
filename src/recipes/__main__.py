"""``python -m recipes``."""

from recipes.cli import main

main()
