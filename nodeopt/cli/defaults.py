"""Per-task and per-dataset defaults of ``nodeopt train`` (the SNOpt code's settings where it has them).

Resolution order for every setting: the flag, else the dataset's entry, else the task's, else
``COMMON``. Learning rates and momenta are per optimiser.
"""

from __future__ import annotations

#: Passes over the training set when neither ``--epochs`` nor ``--iterations`` is given (nor a dataset default).
DEFAULT_EPOCHS = 10

COMMON = dict(gradient="symplectic", method="dopri5", rtol=1e-3, atol=1e-3, seed=0, eval_every=10,
              checkpoint_every=100, weight_decay=0.0, gamma=0.1, t1=1.0, t1_lr=0.1, t1_reg=1e-3,
              t1_update_freq=50, snopt_eps=0.05, snopt_freq=100, snopt_step_size=0.01, train_fraction=1.0,
              seminorm=False, max_steps=1000, compile=False)

TASK = {
    "image": dict(dataset="digits", batch_size=128, width=64,
                  lr=dict(adam=1e-3, sgd=0.02, snopt=0.02), momentum=dict(sgd=0.9, snopt=0.9)),
    "timeseries": dict(dataset="japanese-vowels", batch_size=128, hidden=32, field_width=64, field_layers=4,
                       snopt_step_size=1.0, lr=dict(adam=3e-3, sgd=0.01, snopt=5e-3),
                       momentum=dict(sgd=0.9, snopt=0.9)),
    "density": dict(dataset="moons", batch_size=256, hidden=[64, 64], blocks=1, activation="softplus",
                    divergence="exact", rtol=1e-5, atol=1e-5, snopt_eps=0.1, snopt_freq=250,
                    lr=dict(adam=3e-3, sgd=0.01, snopt=5e-3), momentum=dict(sgd=0.9, snopt=0.9)),
}

DATASET = {
    # the offline defaults, sized for a laptop CPU
    "digits": dict(batch_size=64, width=32, epochs=20),
    "japanese-vowels": dict(batch_size=64, epochs=30),
    "breast-cancer": dict(batch_size=128, divergence="rademacher", epochs=100),
    **{toy: dict(iterations=500, eval_every=50) for toy in
       ("8gaussians", "moons", "checkerboard", "pinwheel", "2spirals", "rings")},
    # the SNOpt code's experiments
    "mnist": dict(epochs=5), "svhn": dict(epochs=10), "cifar10": dict(epochs=20),
    "char-traj": dict(batch_size=512, epochs=400, hidden=32), "art-wr": dict(batch_size=256, epochs=600, hidden=64),
    "spo-ad": dict(batch_size=128, epochs=10, hidden=32),
    "miniboone": dict(batch_size=128, hidden=[860, 860], blocks=1, activation="softplus", rtol=1e-6, atol=1e-8,
                      divergence="rademacher", epochs=20, eval_every=200),
    "gas": dict(batch_size=1000, hidden=[160, 160, 160], blocks=5, activation="tanh", divergence="rademacher",
                epochs=30, eval_every=500),
    "power": dict(batch_size=1000, hidden=[64, 64, 64], blocks=5, activation="tanh", divergence="rademacher",
                  epochs=10, eval_every=500),
    "hepmass": dict(batch_size=1000, hidden=[210, 210], blocks=10, activation="softplus",
                    divergence="rademacher", epochs=10, eval_every=500),
    "bsds300": dict(batch_size=1000, hidden=[630, 630], blocks=2, activation="softplus",
                    divergence="rademacher", epochs=10, eval_every=500),
}


def resolve(name: str, task: str, dataset: str, optimizer: str, given):
    """The value of setting ``name``: ``given`` if not None, else the dataset's, task's or common default."""
    if given is not None:
        return given
    for table in (DATASET.get(dataset, {}), TASK[task], COMMON):
        if name in table:
            value = table[name]
            return value.get(optimizer) if isinstance(value, dict) else value
    return None


def describe(name: str) -> str:
    """The defaults of setting ``name`` in words, for ``--help``: the common one, per task, then per dataset."""
    def shown(value):
        if isinstance(value, dict):
            return "/".join(f"{v:g} ({k})" if isinstance(v, float) else f"{v} ({k})" for k, v in value.items())
        if isinstance(value, list):
            return " ".join(map(str, value))
        return f"{value:g}" if isinstance(value, float) else str(value)

    parts = []
    if name in COMMON:
        parts.append(shown(COMMON[name]))
    elif name == "epochs":
        parts.append(str(DEFAULT_EPOCHS))
    tasks = [f"{task} {shown(t[name])}" for task, t in TASK.items() if name in t]
    datasets = [f"{d} {shown(t[name])}" for d, t in DATASET.items() if name in t]
    if tasks:
        parts.append("per task: " + ", ".join(tasks))
    if datasets:
        parts.append("per dataset: " + ", ".join(datasets))
    return "default " + "; ".join(parts) if parts else "no default"
