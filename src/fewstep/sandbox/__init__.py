"""Running untrusted Python programs (model-written code and its tests): see :mod:`fewstep.sandbox.jail`.

``jail.py`` starts and supervises the limited process; ``child.py`` is the program that runs first
inside it.
"""
