"""Profiles and the local settings file (``./bdi.env`` or ``BDI_ENV_FILE``)."""

import os
import subprocess
import sys

import pytest

from configs import profile
from configs.settings import SettingsError, apply_profile, load_settings
from tests.helpers.paths import REPO


@pytest.fixture
def workdir(monkeypatch, tmp_path):
    """A working directory of its own, whose ./bdi.env is the local settings file."""
    monkeypatch.delenv("BDI_ENV_FILE")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_production_is_the_default(workdir):
    s = load_settings()
    assert (s.profile, s.require_cuda, s.backbone) == ("production", True, "dinov2_vits14")


def test_dev_profile_in_the_local_file_fills_in_cpu_and_packaged_backbone(workdir):
    (workdir / "bdi.env").write_text("# comment\nBDI_PROFILE=dev\n")
    s = load_settings()
    assert (s.profile, s.require_cuda, s.backbone) == ("dev", False, "efficientnet_lite0")


def test_the_profile_fills_in_only_what_nothing_else_sets(workdir, monkeypatch):
    (workdir / "bdi.env").write_text("BDI_PROFILE=dev\nBDI_BACKBONE=dinov2_vits14\n")
    monkeypatch.setenv("BDI_REQUIRE_CUDA", "1")
    s = load_settings()
    assert (s.require_cuda, s.backbone) == (True, "dinov2_vits14")


def test_a_weights_file_keeps_the_production_backbone(workdir, monkeypatch):
    monkeypatch.setenv("BDI_PROFILE", "dev")
    monkeypatch.setenv("BDI_BACKBONE_WEIGHTS", "/w/dinov2_vits14_pretrain.pth")
    s = load_settings()
    assert (s.require_cuda, s.backbone) == (False, "dinov2_vits14")


def test_environment_beats_file_beats_yaml(workdir, monkeypatch):
    yaml = workdir / "app.yaml"
    yaml.write_text("coreset_rate: 0.25\nmin_ok_samples: 3\nbackbone: dinov2_vits14\n")
    monkeypatch.setenv("BDI_CONFIG", str(yaml))
    (workdir / "bdi.env").write_text(
        "BDI_PROFILE=Dev\nBDI_BACKEND_PORT=9200\nBDI_CORESET_RATE=0.5\n"
    )
    monkeypatch.setenv("BDI_BACKEND_PORT", "9300")
    s = load_settings()
    assert s.backend_port == 9300  # environment
    assert s.coreset_rate == 0.5  # local file over yaml
    assert s.min_ok_samples == 3  # yaml over default
    assert s.backbone == "efficientnet_lite0"  # the profile over yaml


def test_the_profile_may_come_from_the_yaml(workdir, monkeypatch):
    yaml = workdir / "app.yaml"
    yaml.write_text("profile: dev\n")
    monkeypatch.setenv("BDI_CONFIG", str(yaml))
    assert load_settings().require_cuda is False


def test_bdi_env_file_names_another_file(monkeypatch, tmp_path):
    named = tmp_path / "line-3.env"
    named.write_text("BDI_PROFILE=dev\nBRAKEDISC_BACKEND_PORT=8123\n")
    monkeypatch.setenv("BDI_ENV_FILE", str(named))
    s = load_settings()
    assert (s.profile, s.backend_port) == ("dev", 8123)


def test_a_missing_named_file_or_an_unknown_profile_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("BDI_ENV_FILE", str(tmp_path / "absent.env"))
    with pytest.raises(SettingsError, match="BDI_ENV_FILE=.*absent.env: no such file"):
        load_settings()
    monkeypatch.setenv("BDI_ENV_FILE", os.devnull)
    monkeypatch.setenv("BDI_PROFILE", "devel")
    with pytest.raises(SettingsError, match="BDI_PROFILE='devel'.*'production' or 'dev'"):
        load_settings()


def test_apply_profile_chooses_unless_already_chosen(workdir, monkeypatch):
    monkeypatch.setenv("BDI_PROFILE", "")  # so that the teardown removes what apply_profile sets
    monkeypatch.delenv("BDI_PROFILE")
    assert apply_profile("dev").require_cuda is False
    assert os.environ["BDI_PROFILE"] == "dev"  # what child processes inherit

    monkeypatch.delenv("BDI_PROFILE")
    (workdir / "bdi.env").write_text("BDI_PROFILE=production\n")
    assert apply_profile("dev").profile == "production"
    assert "BDI_PROFILE" not in os.environ


def test_write_profile_keeps_the_other_lines(tmp_path):
    path = tmp_path / "bdi.env"
    path.write_text("BDI_MODELS_DIR=/srv/m\nBDI_PROFILE=production\n")
    profile.write_profile("dev", path)
    assert path.read_text() == "BDI_MODELS_DIR=/srv/m\nBDI_PROFILE=dev\n"
    assert [p.name for p in tmp_path.iterdir()] == ["bdi.env"]  # no temp file left


@pytest.mark.parametrize(("cuda", "chosen"), [(False, "dev"), (True, None)])
def test_auto_chooses_dev_only_without_cuda(workdir, monkeypatch, capsys, cuda, chosen):
    monkeypatch.setattr(profile, "_has_cuda", lambda: cuda)
    assert profile.main(["auto"]) == 0
    assert capsys.readouterr().out.startswith("bdi.env: ")
    s = load_settings()
    assert s.profile == (chosen or "production")
    assert ("profile" in s.model_fields_set) == bool(chosen)


def test_auto_keeps_an_existing_file(workdir, monkeypatch):
    (workdir / "bdi.env").write_text("BDI_PROFILE=production\n")
    monkeypatch.setattr(profile, "_has_cuda", lambda: False)
    assert profile.main(["auto"]) == 0
    assert (workdir / "bdi.env").read_text() == "BDI_PROFILE=production\n"


def test_usage_error(capsys):
    assert profile.main(["staging"]) == 2
    assert "auto|dev|production" in capsys.readouterr().err


def test_python_m_configs_dev_switches_every_command(tmp_path):
    """The step the errors name, as a real process: then a fresh process reads dev."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))}
    env["PYTHONPATH"] = str(REPO)
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    done = subprocess.run([sys.executable, "-m", "configs", "dev"], **run)
    assert done.returncode == 0 and done.stdout == "bdi.env: BDI_PROFILE=dev\n", done.stderr
    show = "from configs import load_settings as L; s = L(); print(s.require_cuda, s.backbone)"
    done = subprocess.run([sys.executable, "-c", show], **run)
    assert done.stdout == "False efficientnet_lite0\n", done.stderr


def test_apply_profile_before_the_settings_it_fixes_are_valid(workdir, monkeypatch):
    """A size that fits EfficientNet's grid (16 px) but not DINOv2's (14 px) is valid only
    once the dev profile has chosen the backbone."""
    monkeypatch.setenv("BDI_PROFILE", "")
    monkeypatch.delenv("BDI_PROFILE")
    monkeypatch.setenv("BDI_IMAGE_SIZE", "96")
    with pytest.raises(SettingsError, match="multiple of 14"):
        load_settings()
    assert apply_profile("dev").backbone == "efficientnet_lite0"
