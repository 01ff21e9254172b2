"""Running untrusted Python programs (model-written code and its tests): see :mod:`fewstep.sandbox.jail`.

``jail.py`` starts and supervises the jails; ``kernel.py`` builds them; ``child.py`` runs first in
the program's jail and answers the tester; ``tester.py`` runs the tests in a jail of its own and
writes the verdict; ``wire.py`` is the message format between the two.
"""
