"""Typed errors: the library raises these, the CLI prints them as one line and exits non-zero."""


class FewstepError(Exception):
    """Base class of every error fewstep raises on purpose."""


class ConfigError(FewstepError, ValueError):
    """An invalid configuration value (decode, training or evaluation)."""


class ModelLoadError(FewstepError):
    """A model name or directory that cannot be loaded (unknown, missing files, corrupt)."""


class PromptTooLongError(FewstepError, ValueError):
    """A prompt plus the generation does not fit the model's context."""


class TaskError(FewstepError):
    """An unknown task or unreadable task data."""


class ResultsError(FewstepError):
    """An output directory that cannot be used: in use by another run, holding another run's results,
    corrupt result files, or not a writable directory."""


class SandboxUnavailableError(FewstepError):
    """Model-written code must run and no kernel-level sandbox can be made on this machine."""
