"""Running untrusted Python programs (model-written code and its tests): see :mod:`fewstep.sandbox.jail`.

``jail.py`` is the public API (:func:`~fewstep.sandbox.jail.run_program`,
:func:`~fewstep.sandbox.jail.run_tests`); ``machine.py`` detects which protections this machine allows;
``cgroups.py`` makes and empties per-run cgroups; ``spawn.py`` starts a jailed interpreter with its
limits; ``channels.py`` holds the descriptors between the evaluator, the program and the tester;
``supervise.py`` watches the children to the end; ``result.py`` is what a run reports. ``kernel.py``
builds the jails; ``child.py`` runs first in the program's jail and answers the tester; ``tester.py``
runs the tests in a jail of its own and writes the verdict; ``wire.py`` is the message format between
the two.
"""
