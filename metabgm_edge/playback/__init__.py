"""What turns audio chunks into sound: the mixer (joins and crossfades), the feeder thread, the
lock-free ring buffer, the sinks (a PortAudio device, a WAV file) and the WAV format."""
