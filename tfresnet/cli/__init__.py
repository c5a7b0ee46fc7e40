"""The commands: one thin module each (parser, ``main``, ``cli``) over the library.

``python -m tfresnet.<command>`` and the ``tfresnet-<command>`` scripts run them.
"""
