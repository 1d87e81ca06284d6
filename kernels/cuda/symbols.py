"""The symbol of every kernel instantiation in the compiled module: the Itanium-mangled name
NVRTC gives ``kernel<type>`` (what CuPy's ``name_expressions`` would look up).

The backend asks the module for these symbols directly, so ``cupy.RawModule`` is built without
``name_expressions``, and CuPy then keeps the cubin in its on-disk cache (``~/.cupy/kernel_cache``):
a new process loads it instead of spending seconds in NVRTC. CuPy recompiles on every
construction when it is given ``name_expressions``. ``tests/test_cuda.py`` compiles the module
through CuPy's own NVRTC path and checks that this table is exactly NVRTC's lowering; when a
kernel's signature changes, that test fails and prints the new table.
"""

SYMBOLS: dict[str, str] = {
    "bias_activation<float>": "_Z15bias_activationIfEvPT_PKS0_S1_xxiS0_i",
    "bias_activation<double>": "_Z15bias_activationIdEvPT_PKS0_S1_xxiS0_i",
    "activation_forward<float>": "_Z18activation_forwardIfEvPKT_PS0_xiS0_",
    "activation_forward<double>": "_Z18activation_forwardIdEvPKT_PS0_xiS0_",
    "activation_backward<float>": "_Z19activation_backwardIfEvPKT_S2_S2_PS0_xiS0_",
    "activation_backward<double>": "_Z19activation_backwardIdEvPKT_S2_S2_PS0_xiS0_",
    "column_sums<float>": "_Z11column_sumsIfEvPKT_PS0_xx",
    "column_sums<double>": "_Z11column_sumsIdEvPKT_PS0_xx",
    "softmax_xent_labels<float>": "_Z19softmax_xent_labelsIfEvPKT_PKxPS0_S5_xxS0_",
    "softmax_xent_labels<double>": "_Z19softmax_xent_labelsIdEvPKT_PKxPS0_S5_xxS0_",
    "softmax_xent_probs<float>": "_Z18softmax_xent_probsIfEvPKT_S2_PS0_S3_xxS0_",
    "softmax_xent_probs<double>": "_Z18softmax_xent_probsIdEvPKT_S2_PS0_S3_xxS0_",
    "bce_with_logits<float>": "_Z15bce_with_logitsIfEvPKT_S2_PS0_S3_xS0_",
    "bce_with_logits<double>": "_Z15bce_with_logitsIdEvPKT_S2_PS0_S3_xS0_",
    "bce<float>": "_Z3bceIfEvPKT_S2_PS0_S3_xS0_",
    "bce<double>": "_Z3bceIdEvPKT_S2_PS0_S3_xS0_",
    "mse<float>": "_Z3mseIfEvPKT_S2_PS0_S3_xS0_",
    "mse<double>": "_Z3mseIdEvPKT_S2_PS0_S3_xS0_",
    "sgd<float>": "_Z3sgdIfEvPT_PKS0_S1_xS0_S0_iS0_i",
    "sgd<double>": "_Z3sgdIdEvPT_PKS0_S1_xS0_S0_iS0_i",
    "adam<float>": "_Z4adamIfEvPT_PKS0_S1_S1_xS0_S0_S0_S0_S0_S0_S0_",
    "adam<double>": "_Z4adamIdEvPT_PKS0_S1_S1_xS0_S0_S0_S0_S0_S0_S0_",
    "dropout<float>": "_Z7dropoutIfEvPKT_PS0_xxxxS0_",
    "dropout<double>": "_Z7dropoutIdEvPKT_PS0_xxxxS0_",
    "layer_norm<float>": "_Z10layer_normIfEvPKT_S2_S2_iidPS0_S3_S3_xx",
    "layer_norm<double>": "_Z10layer_normIdEvPKT_S2_S2_iidPS0_S3_S3_xx",
    "layer_norm_dx<float>": "_Z13layer_norm_dxIfEvPKT_S2_S2_iS2_S2_PS0_xx",
    "layer_norm_dx<double>": "_Z13layer_norm_dxIdEvPKT_S2_S2_iS2_S2_PS0_xx",
    "layer_norm_params<float>": "_Z17layer_norm_paramsIfEvPKT_S2_S2_S2_PS0_S3_xx",
    "layer_norm_params<double>": "_Z17layer_norm_paramsIdEvPKT_S2_S2_S2_PS0_S3_xx",
    "batch_norm<float>": "_Z10batch_normIfEvPKT_S2_S2_iidPS0_S3_S3_S3_xx",
    "batch_norm<double>": "_Z10batch_normIdEvPKT_S2_S2_iidPS0_S3_S3_S3_xx",
    "batch_norm_backward<float>": "_Z19batch_norm_backwardIfEvPKT_S2_S2_iS2_S2_PS0_iS3_S3_xx",
    "batch_norm_backward<double>": "_Z19batch_norm_backwardIdEvPKT_S2_S2_iS2_S2_PS0_iS3_S3_xx",
}
