"""Experiments around the science in `training`: the recipes (the reference code's and this
project's, `recipe`), the reproduction campaign planned in advance (`campaign`), its report
rendered from templates (`report`, `templates/`), the plots (`plots`), the one-minute
walk-through (`walkthrough`), and the `coordconv train | reproduce | models | export | evaluate`
commands (`cli`)."""
