// placeholder: owned by the CPU-backend helper
