"""Small building blocks every part uses: time, backoff, durations, files, logs, flags."""
