"""Speech for P4: the STFT and the SNR, checked sound-file I/O, the course-layout data, the `denoise` and `te-zip`
commands, the scores, the figures and the listening examples."""
