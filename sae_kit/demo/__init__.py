"""`sae-kit demo`: the whole pipeline on the embedded defaults, resumable, ending in a report.

    run      DemoConfig, quick_config, run_demo: the stages in order, skipping finished ones
    stages   one thin function per stage (harvest, train, evaluate, analyze, dashboard, steer, report)
    report   REPORT/README.md: comparison table, figures, feature gallery, steering, provenance
"""

from sae_kit.demo.run import STAGES, DemoConfig, quick_config, run_demo

__all__ = ["DemoConfig", "STAGES", "quick_config", "run_demo"]
