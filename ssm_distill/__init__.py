"""A notebook-first workbench for distilling pretrained Transformers into subquadratic students (Mamba, Mamba-2/SSD, GLA, RetNet, DeltaNet, HGRN2, mLSTM, ...).

Modules:

- `ssm_distill.encoders`: Task-agnostic distillation of a bidirectional encoder (BERT, MiniLM): the encoder as the stages see a model, a shallower student of the same width, a training loop over one `stages.STAGES` kind, and sentence-embedding agreement.
- `ssm_distill.eval`: How good is a distilled student: held-out perplexity, agreement and KL with its teacher, per-layer errors (MOHAWK's stage-1 and stage-2 measures), and zero-shot scores through lm-evaluation-harness's own `HFLM`.
- `ssm_distill.kernels`: Softmax attention, linear attention, RetNet, simple GLA / Mamba-2 SSD, GLA, an LTI (S4D-like) mixer and a long convolution, each as a mixing matrix, a chunked parallel form and a recurrent form, plus the shared machinery.
- `ssm_distill.kernels_delta`: The mixers whose mixing matrix is not a plain decayed `Q K^T`: DeltaNet, Gated DeltaNet, xLSTM's mLSTM and Mamba-1's selective scan. Each in a quadratic, a chunked and a recurrent form, plus its mixing matrix.
- `ssm_distill.recipes`: Run configs for real teachers (`recipes/*.yaml`, one per paper setting) and their stand-ins: each recipe turned into a tiny run of the same architecture family, data shape, stages and parallel layout, that runs offline in seconds.
- `ssm_distill.selection`: Score every teacher head for keeping as softmax attention in a hybrid student, by the methods the field uses (uniform, random, mixer fit, ablation, KL recovery, retrieval), choose a budget of heads or layers, compare the methods' rankings, and look at a choice with its KV-cache and decode cost.
- `ssm_distill.students`: The teacher's own skeleton with its attention swapped for a subquadratic mixer: a Hugging Face model that saves, reloads, runs layer by layer for MOHAWK's stages, and generates in constant memory per mixer layer.
- `ssm_distill.sweeps`: One run config over several seeds, and several configs side by side: the mean ± std of what their reports measured. The reproductions in `experiments/` and the tutorials are built on these."""

__version__ = "0.1.0"

