"""Training the agent with accelerate: ``train.py``, its recipes (``configs/*.yaml``) and ``bundle.py``.

The folder is ``training/`` in the repository and ships in the wheel as ``anymdp_agent.training``, so
``python -m anymdp_agent.training.train`` (and ``anymdp-agent train``) work from an installed package.
"""
