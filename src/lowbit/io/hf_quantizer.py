"""transformers integration: ``quant_method: "lowbit"`` checkpoints load through ``from_pretrained``.

Importing this module (``import lowbit`` does) registers ``LowbitConfig`` and
``LowbitHfQuantizer`` under the name "lowbit". Then
``AutoModelForCausalLM.from_pretrained(native_dir)`` builds the float skeleton on the meta
device, this quantizer swaps each quantized linear for an empty ``QuantLinear`` (whose buffer
names are the checkpoint's tensor names, so transformers fills them directly, int dtypes kept,
the empty sentinel ``L.weight`` included) and the load report stays clean. Without lowbit
imported the same call fails: see :mod:`lowbit.io.native`.

``lowbit.load`` also uses this quantizer for compressed-tensors checkpoints
(``layout: "compressed-tensors"``): layers are swapped for :class:`CompressedTensorsLinear`
shells that match CT's tensors, and converted to ``QuantLinear`` after loading. Either way the
loaded model's ``config.quantization_config`` then describes the native layout, so
``model.save_pretrained`` writes a native checkpoint (sentinels included).
"""
from __future__ import annotations

from torch import nn
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..arch import get_module, set_module
from ..errors import InputError
from ..modules.input_hadamard import empty_input_hadamard
from . import compressed_tensors as ct
from . import native
from .layers import float_linear_dims, module_device_dtype, spec_scale_dtype

METHOD = "lowbit"


class LowbitConfig(QuantizationConfigMixin):
    """The ``quantization_config`` dict of a lowbit checkpoint, kept as is (see lowbit.io.native)."""

    def __init__(self, quant_method: str = METHOD, **fields):
        self.__dict__.update(fields)
        self.quant_method = METHOD

    def get(self, key, default=None):
        return self.__dict__.get(key, default)


class LowbitHfQuantizer(HfQuantizer):
    # Loading only: a float checkpoint cannot be quantized through from_pretrained
    # (transformers raises when such a config meets a non-quantized checkpoint).
    requires_calibration = True
    quantization_config: LowbitConfig

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    def _process_model_before_weight_loading(self, model, **kwargs):
        layout = self.quantization_config.get("layout", native.LAYOUT)
        if layout == native.LAYOUT:
            self._swap_native(model)
        elif layout == "compressed-tensors":
            self._swap_compressed_tensors(model)
        else:
            raise InputError(f"lowbit checkpoint layout {layout!r} is not supported")
        return model

    def _swap_native(self, model):
        qc = self.quantization_config.to_dict()
        activations = native.layer_activations(qc)
        rotating = qc.get("input_hadamard") or {}
        for name, spec in native.layer_specs(qc).items():
            old = _module(model, name)
            out_f, in_f, bias = float_linear_dims(old, name)
            device, dtype = module_device_dtype(old)
            q = native.empty_quant_linear(out_f, in_f, spec, bias, spec_scale_dtype(spec, dtype), device,
                                          activations.get(name))
            # The module mirrors the checkpoint, sentinel included: transformers loads it like any
            # tensor (no "unexpected key"), and model-specific init code that reaches for
            # ``<layer>.weight`` (GPT-2's scaled c_proj init) finds an empty tensor to no-op on.
            q.register_buffer(native.SENTINEL, native.sentinel().to(device))
            if name in rotating:  # its signs come with the checkpoint's tensors
                empty_input_hadamard(q, int(rotating[name]))
            set_module(model, name, q)

    def _swap_compressed_tensors(self, model):
        qc = self.quantization_config.get("compressed_tensors") or {}
        ct.check_config(qc, "compressed-tensors checkpoint")
        for name, spec in ct.resolve_layers(model, qc).items():
            old = _module(model, name)
            out_f, in_f, bias = float_linear_dims(old, name)
            device, dtype = module_device_dtype(old)
            # pack-quantized shells, or the shells of formats other files registered (W8A8)
            set_module(model, name, ct.empty_layer(out_f, in_f, spec, bias, dtype, device))

    def _process_model_after_weight_loading(self, model, **kwargs):
        for name, m in list(model.named_modules()):
            if isinstance(m, ct.CompressedTensorsLinear):
                set_module(model, name, m.to_quant_linear(name))
        recipe = _recipe(self.quantization_config.get("recipe"))
        if recipe is not None:
            model.lowbit_recipe = recipe
        # From here on the model is a native lowbit model, whatever it was loaded from.
        self.quantization_config = LowbitConfig(**native.quantization_config(model, recipe))
        model.config.quantization_config = self.quantization_config
        return model

    def get_state_dict_and_metadata(self, model):
        return native.state_dict(model), {}


def _module(model: nn.Module, name: str) -> nn.Module:
    m = get_module(model, name)
    if m is None:
        raise InputError(f"checkpoint names layer {name}, which this model does not have")
    return m


def _recipe(d):
    if not d:
        return None
    from ..recipes import Recipe
    return Recipe.from_dict(d)


# Registration is idempotent so re-imports (importlib.reload, tests) do not raise.
if METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
    register_quantization_config(METHOD)(LowbitConfig)
if METHOD not in AUTO_QUANTIZER_MAPPING:
    register_quantizer(METHOD)(LowbitHfQuantizer)
