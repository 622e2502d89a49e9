"""`python -m xwin.cli`: how the local executor and the training launcher start stages."""

from xwin.cli import main

main()
