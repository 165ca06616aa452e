"""The pipeline engine (`stage`: Stage, run_pipeline, the one fingerprint), what a run reports
(`report`: results.md), and the system job every configuration runs (`system.run_system`)."""
