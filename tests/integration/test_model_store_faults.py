"""Broken and hostile model folders on a real server (port 0): the server starts and serves the
sound models, every LoadModel of a broken folder gets FAILED_PRECONDITION naming the file (relative
to the store) and the fault, bad names get INVALID_ARGUMENT, unknown ones NOT_FOUND — never
INTERNAL, never an absolute path — and a config asking for an enormous network allocates nothing."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from services.client import CvtasksClient
from services.launch import running_server

GEN, CAP = "tiny-generator", "tiny-captioner"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(200)


def _args(**changes):
    return lambda c: {**c, "model_args": {**c["model_args"], **changes}}


def _field(**changes):
    return lambda c: {**c, **changes}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


# folder -> (the model it starts from, config change, weights change, raw config text, file named, words)
VARIANTS: dict[str, tuple] = {
    "unknown-task": (GEN, _field(task="sorting"), None, None, "config.json", "unknown task 'sorting'"),
    "unknown-arg": (GEN, _args(bogus=1), None, None, "config.json", "bogus"),
    "wrong-typed-arg": (GEN, _args(ngf="8"), None, None, "config.json", "model_args do not build"),
    "args-not-object": (GEN, _field(model_args=[1]), None, None, "config.json", "`model_args` must be an object"),
    "truncated-weights": (GEN, None, _truncate, None, "model.safetensors", "not a complete safetensors file"),
    "empty-weights": (GEN, None, lambda p: p.write_bytes(b""), None, "model.safetensors", "truncated, empty"),
    "png-as-weights": (GEN, None, lambda p: p.write_bytes(PNG), None, "model.safetensors", "of another kind"),
    "no-weights": (GEN, None, Path.unlink, None, "model.safetensors", "no such file"),
    "config-array": (GEN, None, None, "[]", "config.json", "must hold a JSON object, not a list"),
    "config-string": (GEN, None, None, '"x"', "config.json", "must hold a JSON object, not a string"),
    "config-invalid": (GEN, None, None, '{"name": ', "config.json", "not valid JSON"),
    "classes-string": (GEN, _field(classes="abc"), None, None, "config.json", "`classes` must be a list of strings"),
    "classes-numbers": (GEN, _field(classes=[1, 2]), None, None, "config.json", "`classes` must be a list of strings"),
    "newer-format": (GEN, _field(format_version=99), None, None, "config.json", "upgrade cvtasks"),
    "weights-from-passwd": (
        CAP,
        _args(encoder_weights_path="/etc/passwd"),
        None,
        None,
        "config.json",
        "remove `encoder_weights_path`",
    ),
    "weights-from-folder": (
        CAP,
        _args(encoder_weights_path="/"),
        None,
        None,
        "config.json",
        "names weights outside the model folder",
    ),
    "negative-nz": (GEN, _args(nz=-5), None, None, "config.json", "`model_args.nz` is -5"),
    "negative-hidden": (CAP, _args(hidden_size=-1), None, None, "config.json", "`model_args.hidden_size` is -1"),
    "negative-layers": (CAP, _args(num_layers=-1), None, None, "config.json", "`model_args.num_layers` is -1"),
    "enormous-ngf": (GEN, _args(ngf=100000), None, None, "config.json", "parameters, more than cvtasks loads"),
    "enormous-hidden": (CAP, _args(hidden_size=10**6), None, None, "config.json", "parameters, more than"),
    "narrower-ngf": (GEN, _args(ngf=4), None, None, "model.safetensors", "of another shape"),
    "bad-max-length": (
        CAP,
        lambda c: {**c, "extra": {**c["extra"], "max_length": "long"}},
        None,
        None,
        "config.json",
        "fails its warm-up run",
    ),
}
BROKEN = sorted(VARIANTS) + ["captioner-weights", "self-referencing-captioner"]


def _copy(source: Path, store: Path, name: str, change: Callable | None = None, raw: str | None = None) -> Path:
    folder = store / name
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    config = (change or (lambda c: c))({**config, "name": name})
    (folder / "config.json").write_text(raw if raw is not None else json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def store(generator_store, captioner_store, tmp_path_factory):
    store = tmp_path_factory.mktemp("faulty-store")
    sources = {GEN: generator_store / GEN, CAP: captioner_store / CAP}
    for name, source in sources.items():
        shutil.copytree(source, store / name)
    for name, (model, change, weights, raw, _, _) in VARIANTS.items():
        folder = _copy(sources[model], store, name, change, raw)
        if weights is not None:
            weights(folder / "model.safetensors")
    other = _copy(sources[GEN], store, "captioner-weights")  # another model's weights under a generator's config
    shutil.copy(sources[CAP] / "model.safetensors", other / "model.safetensors")
    # its encoder weights named its own folder, which once recursed until Python's recursion limit
    this = store / "self-referencing-captioner"
    _copy(sources[CAP], store, this.name, _args(encoder_weights_path=str(this)))
    return store


@pytest.fixture(scope="module")
def server(store):
    with running_server(task=["generation", "captioning"], model_store=store) as address:
        yield address


@pytest.fixture()
def client(server):
    with CvtasksClient(server, timeout=120) as c:
        yield c


def _refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def _no_paths(details: str, store: Path) -> bool:
    """No absolute path: neither the store's nor any token that starts with '/'."""
    return str(store) not in details and not re.search(r"(^|[\s'\"(\[])/", details)


def test_a_store_with_broken_folders_starts_and_serves_its_sound_models(client):
    assert sorted(m.name for m in client.list_models()) == [CAP, GEN]
    assert client.health() == "SERVING"
    assert len(client.generate(count=2, seed=1).images) == 2


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_loading_a_broken_folder_names_the_file_and_the_fault(client, store, name):
    _, _, _, _, file, words = VARIANTS[name]
    error = _refusal(lambda: client.load_model(name))
    details = error.details()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, details
    assert f"{name}/{file}" in details and words in details, details
    assert _no_paths(details, store), details


def test_another_models_weights_are_refused_by_their_header(client, store):
    error = _refusal(lambda: client.load_model("captioner-weights"))
    details = error.details()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "captioner-weights/model.safetensors" in details and "weights missing from the file" in details
    assert _no_paths(details, store)


def test_a_captioner_whose_encoder_weights_name_its_own_folder_fails_cleanly(client, store):
    error = _refusal(lambda: client.load_model("self-referencing-captioner"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "self-referencing-captioner/config.json" in error.details()
    assert "remove `encoder_weights_path`" in error.details() and _no_paths(error.details(), store)


@pytest.mark.parametrize(
    "name, words",
    [
        ("x" * 300, "too long"),
        ("y" * 2**20, "too long"),
        ("../tiny-generator", "plain folder name"),
        ("a b", "plain folder name"),
    ],
)
def test_names_that_are_no_folder_name_are_invalid_and_not_echoed_in_full(client, name, words):
    error = _refusal(lambda: client.load_model(name))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details()
    assert len(error.details()) < 400


@pytest.mark.parametrize("call", ["unload_model", "get_model", "generate"])
def test_a_megabyte_name_elsewhere_is_not_found_in_a_short_message(client, call):
    method = getattr(client, call)
    error = _refusal(lambda: method(model="z" * 2**20) if call == "generate" else method("z" * 2**20))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "1048576 characters" in error.details()
    assert len(error.details()) < 400


def test_an_unknown_name_is_not_found_naming_the_model_not_the_file_system(client, store):
    error = _refusal(lambda: client.load_model("nope"))
    details = error.details()
    assert error.code() == grpc.StatusCode.NOT_FOUND and "`nope`" in details
    assert _no_paths(details, store) and not any(name in details for name in BROKEN), details


def test_enormous_networks_fail_without_allocating_them(client):
    def rss_bytes() -> int:  # the server runs in this process
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    client.load_model(GEN)  # whatever a load allocates once (thread pools, caches) is counted before
    before = rss_bytes()
    for _ in range(3):
        for name in ("enormous-ngf", "enormous-hidden"):
            assert _refusal(lambda: client.load_model(name)).code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rss_bytes() - before < 200 * 2**20


def test_the_server_keeps_serving_after_every_refusal(client):
    for name in BROKEN:
        _refusal(lambda: client.load_model(name))
    assert client.health() == "SERVING" and sorted(m.name for m in client.list_models()) == [CAP, GEN]
    assert client.load_model(GEN).ready and len(client.generate(count=1, seed=2).images) == 1
