"""`python -m salience ...`: the `salience` command, e.g. under `torchrun -m salience explain ...`."""

from salience.cli import app

app(prog_name="salience")
