from .session import OrtRunner, TorchRunner, make_runner, make_session

__all__ = ["OrtRunner", "TorchRunner", "make_runner", "make_session"]
