"""The science of CoordConv, to read top to bottom: `data` (the canvas, squares and splits, a
task's data), `layers` (AddCoords and CoordConv in 1, 2 and 3 dimensions), `nets` (the networks
of the paper's tasks and their baselines), `metrics` (what is measured, and the goals), `train`
(the loop), `serving` and `export` (what is shipped, as ONNX), `evaluate` (judging the shipped
full-canvas models). The recipes that fill a training config in, the reproduction campaign, its
report and plots, and the commands are the `experiments` package.

`data` and `metrics` use numpy only, so evaluation code and tests can use them without torch.
"""
