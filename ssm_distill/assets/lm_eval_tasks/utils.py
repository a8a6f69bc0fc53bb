"Loads the documents of the local tasks for lm-eval (written by ssm_distill.eval.write_local_tasks)."
from ssm_distill.eval import load_local_docs as load_docs
