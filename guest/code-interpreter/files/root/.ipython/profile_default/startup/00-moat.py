# moat's code interpreter: rich outputs for the E2B client (moat_interpreter/ipython_setup.py).
import moat_interpreter.ipython_setup as _moat_setup

_moat_setup.setup(get_ipython())  # noqa: F821 - IPython's startup namespace has it
del _moat_setup
