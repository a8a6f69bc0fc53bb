"A notebook-first workbench for distilling Transformers into subquadratic students."
__version__ = "0.1.0"
