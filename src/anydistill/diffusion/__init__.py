"""Diffusion and flow generators: noise schedules, time samplers and step-distillation methods."""
