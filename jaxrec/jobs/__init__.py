"""Jobs: functions that read inputs, run a model package's code and write artifacts into a
folder (the stages of `jaxrec.pipeline`, or standalone via tools/). Model packages
(encoders/, collaborative/, quantizers/, generator/) hold models only."""
