"""The base class of every error caused by what the user gave: a file, a config key, an image.

Entry points (``train.py``, ``eval.py``, ``infer.py``, ``export.py``, ``tools/*``) report an ``InputError``
as one line naming the file, key or image and what to do, without a traceback. Subclasses keep their
own names (``ConfigError``, ``CocoFormatError``...) and also derive from ``ValueError`` where they did.
"""


class InputError(Exception):
    """A mistake in the user's input; the message names the file, key or image and says what to do."""
