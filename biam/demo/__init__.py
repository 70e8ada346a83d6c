"""Generated data for the demos and tests: a learnable NUS-WIDE-like set in the released layout
(:mod:`.synthetic`, ``scripts/demo.sh``) and tagged images of coloured shapes (:mod:`.shapes`,
``scripts/demo_own_data.sh``)."""
