"""Task specs (``envs/*.yaml``) and building Gymnasium envs with perturbed dynamics."""

from rlflat.tasks.build import dynamics_values, env_attributes, env_kwargs, make_env, set_dynamics
from rlflat.tasks.spec import (
    ENVS_DIR,
    DynamicsParameter,
    ReferenceReturns,
    TaskSpec,
    list_tasks,
    load_spec_file,
    load_task,
)

__all__ = [
    "ENVS_DIR",
    "DynamicsParameter",
    "ReferenceReturns",
    "TaskSpec",
    "dynamics_values",
    "env_attributes",
    "env_kwargs",
    "list_tasks",
    "load_spec_file",
    "load_task",
    "make_env",
    "set_dynamics",
]
