"""The checkpoint format, in one place: what train.py saves, and how every script (evaluate.py,
train.py --resume, the analysis scripts) loads a checkpoint and rebuilds its model.

A train.py checkpoint is a dict of tensors and plain values (so torch.load(weights_only=True)
reads it): "model" (the plain model's state_dict), "model_name" and "model_config" (enough to
rebuild the model), "classes", "class_names", and the training state (optimizer, progress,
RNG, ...). Checkpoints from before the model registry have no "model_name": they hold
cvt-simplified. Foreign checkpoints (the study's Lightning runs: "state_dict" with keys
prefixed `model.`; compiled or DDP models) are recognised by their keys. Also here: the payload
train.py saves and every rank's RNG states. Not here: when a resume is allowed (resume.py).
"""
import functools
import io
import os
import pickle
import re
import zipfile
from dataclasses import asdict

import torch
from torch.utils._pytree import tree_map_only  # torch's map over nested containers (what torch.compile uses)

from errors import INSTALL_EXTRAS, DataError
from layout import read_json, write_atomically, write_json
from model import DEFAULT_MODEL, MODELS, build_model, config_from_state_dict, make_config

KEY_PREFIXES = ("model.", "_orig_mod.", "module.")  # Lightning, torch.compile, DDP
HF_WEIGHTS, HF_CONFIG, HF_FORMAT = "model.safetensors", "config.json", "tiny-imagenet-kit"  # export.py --hf's folder
SAFETENSORS_MISSING = f"a Hugging Face-style folder needs the safetensors package: {INSTALL_EXTRAS}"

REFUSED_PICKLE = ("it is a PyTorch file, but it holds pickled Python objects (such as a whole model saved with "
                  "torch.save(model)), and loading those would run code from the file; save model.state_dict() "
                  "instead, or a train.py checkpoint")


def model_entries(model):
    """The part of a checkpoint that rebuilds the model (made by model.build_model): its
    weights, registry name and config."""
    return {"model": model.state_dict(), "model_name": model.model_name, "model_config": asdict(model.config)}


def save_checkpoint(payload, path):
    """torch.save through a temporary file and a rename: a crash or a full disk leaves the
    previous file intact. The bytes are made in memory and written by Python: torch.save writing
    a file itself reports a failed write (a full disk, ENOSPC) as a RuntimeError that names no
    cause ("unexpected pos"), where Python's write raises the OSError that says why."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())

    write_atomically(path, write)


def load_checkpoint(path):
    """The checkpoint's dict, loaded without executing anything in it (also from a folder that
    export.py --hf wrote)."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, HF_WEIGHTS)):
        return read_hf_folder(path)
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory: give a checkpoint file, such as {os.path.join(path, 'best.pt')} "
                        f"(or last.pt to resume)")
    if not os.path.isfile(path):
        raise DataError(f"no checkpoint at {path}")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path} is empty (0 bytes): the file was not written completely; use another checkpoint")
    with open(path, "rb") as f:
        pickled = f.read(1) == b"\x80"  # the pickle protocol mark: torch.save's legacy (non-zip) format
    if not (pickled or zipfile.is_zipfile(path)):  # (torch would call it a refused pickle)
        raise DataError(f"cannot load {path}: it is not a PyTorch checkpoint (neither a zip nor a pickle)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):  # a real PyTorch file, refused for what it holds
            raise DataError(f"cannot load {path}: {REFUSED_PICKLE}") from None
        raise DataError(f"cannot load {path}: it is not a PyTorch checkpoint (or it is damaged)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, EOFError) or "central directory" in reason or "failed finding" in reason:
            reason = "the file is truncated or damaged (an interrupted copy or download?)"
        raise DataError(f"cannot load {path} as a checkpoint: {reason[:200]}") from None
    except Exception as error:  # unpickling garbage raises anything (KeyError, IndexError, ...)
        raise DataError(f"cannot load {path}: it is not a PyTorch checkpoint (or it is damaged: {type(error).__name__})") from None
    if not isinstance(checkpoint, dict) or not ({"model", "state_dict"} & checkpoint.keys()):
        raise DataError(f"{path} is not a model checkpoint (no 'model' or 'state_dict' entry)")
    return checkpoint


def plain_state_dict(state_dict):
    """Strip Lightning's `model.`, torch.compile's `_orig_mod.` and DDP's `module.` prefixes, in
    any number and order (a compiled DDP model saves `_orig_mod.module.`, a DDP-wrapped compiled
    one `module._orig_mod.`)."""
    return {strip_prefixes(key): value for key, value in state_dict.items()}


def strip_prefixes(key):
    while prefix := next((p for p in KEY_PREFIXES if key.startswith(p)), None):
        key = key[len(prefix) :]
    return key


def key_pattern(keys):
    """The keys with block and layer numbers blanked: the same for every depth of one model."""
    return frozenset(re.sub(r"\.\d+(?=\.)", ".N", key) for key in keys)


@functools.cache
def default_models():
    """{name: (key pattern, classifier weight key)} of every registered model at its defaults."""
    described = {}
    for name in MODELS:
        with torch.device("meta"):  # shapes only: no memory, no initialisation time
            state_dict = build_model(name, 1).state_dict()
        head = [key for key, value in state_dict.items() if value.ndim == 2][-1]  # the classifier comes last
        described[name] = (key_pattern(state_dict), head)
    return described


def model_name_from_keys(state_dict):
    """The registered model whose parameter names these are, or None."""
    pattern = key_pattern(state_dict)
    return next((name for name, (known, _) in default_models().items() if known == pattern), None)


def config_for_foreign(name, state_dict, settings, checkpoint, path):
    """A config for a checkpoint that carries none: for cvt-simplified, what the shapes tell (the
    notebook's runs) with the heads, which no shape tells, from Lightning's saved hyperparameters
    or the settings, else a DataError asking for them; otherwise the model's defaults (the study's
    architectures) with the checkpoint's class count. Settings (as on the command line) change either."""
    if name == DEFAULT_MODEL:
        inferred = asdict(config_from_state_dict(state_dict))
        num_classes, _ = inferred.pop("num_classes"), inferred.pop("in_channels")
        heads = (checkpoint.get("hyper_parameters") or {}).get("num_heads")
        if heads is None and "num_heads" not in settings:
            raise DataError(f"{path} does not record how many attention heads its model has (the weights cannot tell): "
                            "give --num-heads N as its run had it (the notebook's default is 1)")
        return make_config(name, num_classes, **{**inferred, "num_heads": heads, **settings})
    return make_config(name, state_dict[default_models()[name][1]].shape[0], **settings)


def model_from_checkpoint(checkpoint, path="checkpoint", use_ema=True, model_name=None, settings=None):
    """Rebuild the model from the checkpoint alone: its EMA weights when it has them (what
    train.py evaluated) unless use_ema is False. For a foreign checkpoint, model_name and
    settings ({field: value or text}) say which architecture it holds when its keys and
    shapes cannot tell (a variant of a model, other heads)."""
    if not use_ema and checkpoint.get("weights") == "ema":
        raise DataError(f"{path} holds only the EMA's weights: export the checkpoint again with --no-ema for the trained ones")
    if use_ema and "ema" in checkpoint:
        state_dict = checkpoint["ema"]["model"]
    else:
        weights = checkpoint["model"] if "model" in checkpoint else checkpoint["state_dict"]
        if not isinstance(weights, dict):  # (explain.py's maps.pt has a "model" entry too: the model's name)
            raise DataError(f"{path} is not a model checkpoint: its weights are not there (give best.pt or last.pt)")
        state_dict = plain_state_dict(weights)
    saved_name = checkpoint.get("model_name") or (DEFAULT_MODEL if "model_config" in checkpoint else None)
    if model_name and saved_name and model_name != saved_name:
        raise DataError(f"{path} holds a {saved_name} model, not --model {model_name}")
    if settings and saved_name:
        raise DataError(f"{path} records its model's settings: drop {' '.join('--' + k.replace('_', '-') for k in settings)}")
    name = saved_name or model_name or model_name_from_keys(state_dict)
    if name is None:
        raise DataError(f"{path}: its parameter names match no model here; if it holds one of them "
                        f"({', '.join(MODELS)}), say which with --model NAME (and its settings where they differ)")
    saved = checkpoint.get("model_config")
    try:
        make_config(name, 1, **(settings or {}))  # a setting the model lacks, or a bad value: said as such
    except ValueError as error:
        raise DataError(str(error)) from None
    try:
        config = MODELS[name].config(**saved) if saved else config_for_foreign(name, state_dict, settings or {}, checkpoint, path)
        model = build_model(name, config=config)
    except (KeyError, TypeError, ValueError):  # the keys are another model's
        raise DataError(f"{path} does not hold a {name} model: its parameter names are not {name}'s") from None
    mismatch = state_dict_mismatch(model.state_dict(), state_dict)
    if mismatch:
        hint = "" if saved else (f"; if it is a {name} of other sizes, give them as train.py takes them "
                                 f"(`python model.py --model {name}` lists the settings)")
        raise DataError(f"{path} does not hold a {name} model as configured: {mismatch}{hint}")
    model.load_state_dict(state_dict, strict=True)
    return model


def state_dict_mismatch(expected, found):
    """'' when found fits expected, else a short description of the first differences."""
    missing, unexpected = [k for k in expected if k not in found], [k for k in found if k not in expected]
    reshaped = [k for k in expected if k in found and expected[k].shape != found[k].shape]
    parts = [f"{len(missing)} parameters missing (first {missing[0]})"] if missing else []
    parts += [f"{len(unexpected)} unexpected (first {unexpected[0]})"] if unexpected else []
    if reshaped:
        key = reshaped[0]
        shape = lambda tensor: "x".join(map(str, tensor.shape)) or "scalar"  # noqa: E731
        parts.append(f"{key} is {shape(found[key])} in the checkpoint, {shape(expected[key])} here")
    return ", ".join(parts)


def class_difference(saved, classes):
    """'' when the class lists agree, else a short description of how they differ."""
    saved, classes = list(saved), list(classes)
    if saved == classes:
        return ""
    if len(saved) != len(classes):
        return f"{len(saved)} classes in the checkpoint, {len(classes)} in the data"
    index = next(i for i, (a, b) in enumerate(zip(saved, classes)) if a != b)
    return f"class {index} is {saved[index]} in the checkpoint, {classes[index]} in the data"


def check_classes(checkpoint, classes, path):
    saved = checkpoint.get("classes")
    if saved is not None and class_difference(saved, classes):
        raise DataError(f"{path} was trained on other classes than the prepared data: {class_difference(saved, classes)}")


# ---------------------------------------------------------------- export.py --hf's folder


def write_hf_folder(checkpoint, model, folder, weights):
    """A Hugging Face-style folder: model.safetensors (the model's state_dict, tensor for tensor)
    and config.json (what rebuilds the model, id2label with the class names, the wnids, the input
    size and normalisation, and the evaluation settings the run used)."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise DataError(SAFETENSORS_MISSING) from None
    from constants import IMAGE_SIZE, MEAN, STD

    classes = checkpoint.get("classes") or [str(index) for index in range(model.config.num_classes)]
    names = checkpoint.get("class_names") or classes
    run = checkpoint.get("config", {})
    config = {
        "model_type": HF_FORMAT, "architectures": [model.model_name], "model_config": asdict(model.config),
        "num_labels": len(classes), "id2label": {str(index): name for index, name in enumerate(names)},
        "label2id": {name: index for index, name in enumerate(names)}, "wnids": list(classes),
        "image_size": IMAGE_SIZE, "num_channels": 3, "image_mean": list(MEAN), "image_std": list(STD),
        "input": "float RGB in [0, 1], normalised with image_mean and image_std before the model",
        "weights": weights, "evaluation": {key: run[key] for key in ("tta", "eval_amp", "amp_dtype", "device") if key in run},
        "synthetic": bool(checkpoint.get("synthetic", False)),
    }
    existing = read_json(os.path.join(folder, HF_CONFIG))
    if isinstance(existing, dict) and existing.get("model_type") != HF_FORMAT:  # a run directory's, say
        raise DataError(f"{folder} already has a {HF_CONFIG} that export.py did not write (a run directory?): "
                        "give a new folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create {folder} ({error.strerror or error})") from None
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    write_atomically(os.path.join(folder, HF_WEIGHTS), lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    write_json(os.path.join(folder, HF_CONFIG), config)


def read_hf_folder(folder):
    """export.py --hf's folder as a checkpoint dict that every script reads (it does not resume)."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise DataError(SAFETENSORS_MISSING) from None
    config_path = os.path.join(folder, HF_CONFIG)
    if not os.path.isfile(config_path):
        raise DataError(f"{folder} has {HF_WEIGHTS} but no {HF_CONFIG}: the model it holds is not known")
    config = read_json(config_path) or {}
    if config.get("model_type") != HF_FORMAT:
        raise DataError(f"{folder} is a Hugging Face folder of another kind ({config.get('model_type')!r}), "
                        f"not one export.py --hf wrote")
    try:
        weights = load_file(os.path.join(folder, HF_WEIGHTS))
    except (SafetensorError, OSError) as error:
        raise DataError(f"cannot load {os.path.join(folder, HF_WEIGHTS)}: {str(error).splitlines()[0][:200]}") from None
    try:
        return {"model": weights, "weights": config.get("weights", "trained"),  # (the EMA's, when the run kept one)
                "model_name": config["architectures"][0], "model_config": config["model_config"],
                "classes": config["wnids"], "class_names": [config["id2label"][str(index)] for index in range(config["num_labels"])],
                "synthetic": config.get("synthetic", False), "config": config.get("evaluation", {})}
    except (KeyError, IndexError, TypeError) as error:
        raise DataError(f"{config_path} lacks what rebuilds the model ({error}): export the checkpoint again") from None


# ---------------------------------------------------------------- train.py's checkpoints


def checkpoint_payload(model, data, updater, progress, config, rng):
    """Only CPU tensors and plain Python values, so torch.load(weights_only=True) reads it on any
    machine (the format: checkpoint.py). With an EMA, "ema" holds the averaged weights: what was evaluated
    and what evaluate.py uses."""
    payload = {
        **model_entries(model),  # the plain model: no module. or _orig_mod. prefixes
        "classes": list(data.classes),
        "class_names": list(data.class_names),  # so that evaluate.py --files needs no prepared data
        "synthetic": data.synthetic,
        "optimizer": updater.optimizer.state_dict(),
        "scaler": updater.scaler.state_dict(),
        "schedule": asdict(updater.schedule),
        "progress": progress,
        "config": config,
        "rng": rng,
    }
    if updater.ema is not None:
        payload["ema"] = updater.ema.state_dict()
    return tree_map_only(torch.Tensor, torch.Tensor.cpu, payload)  # loads on any machine, with or without a GPU


def rng_states(device, dist):
    """Every rank's RNG states (dropout draws from them), gathered for the checkpoint."""
    mine = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if device.type == "cuda" else [])
    states = dist.all_gather(mine)
    return {"torch": [torch_state for torch_state, _ in states], "cuda": [cuda_state for _, cuda_state in states]}


def restore_rng_states(rng, rank):
    """This rank's RNG states from a checkpoint (dropout draws from them); a rank the run did not
    have (resumed on more processes) keeps its own seed."""
    if rank < len(rng["torch"]):
        torch.set_rng_state(rng["torch"][rank])
        if torch.cuda.is_available() and rng["cuda"][rank]:
            torch.cuda.set_rng_state_all(rng["cuda"][rank][: torch.cuda.device_count()])
