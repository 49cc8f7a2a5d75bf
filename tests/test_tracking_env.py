"""The tracking store follows the configuration, unless the user's environment names one."""

from sentiment_cli import config, registry


def test_a_store_used_once_does_not_stick(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    a = config.load("tiny", [f"mlflow.tracking_uri=sqlite:///{tmp_path}/a.db"], root=tmp_path)
    b = config.load("tiny", [f"mlflow.tracking_uri=sqlite:///{tmp_path}/b.db"], root=tmp_path)
    assert registry.client(a).tracking_uri.endswith("/a.db")
    # mlflow exported a.db into the environment; b's configuration must still win
    assert registry.client(b).tracking_uri.endswith("/b.db")
    assert registry.client(b)._registry_uri.endswith("/b.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/user.db")
    assert registry.tracking_uri(b).endswith("/user.db")  # the user's own variable always wins


def test_resolving_a_registry_uri_without_a_store_creates_nothing(tmp_path, monkeypatch):
    import pytest

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = config.load("tiny", [f"mlflow.tracking_uri=sqlite:///{tmp_path}/absent.db"], root=tmp_path)
    with pytest.raises(registry.RegistryError, match="no MLflow store"):
        registry.resolve_model(cfg, "models:/sentiment-classifier@champion")
    assert not (tmp_path / "absent.db").exists()
