"""The stall watchdog: every rank's progress recorded (progress.py), reported over a side
channel that does not use Horovod (channel.py), judged on rank 0 (verdict.py, with what /proc
tells: proc.py), and a stalled rank named in one line (watchdog.py)."""
