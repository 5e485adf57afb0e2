// placeholder until the kernel branch lands
