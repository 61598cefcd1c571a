"""Context distillation: a model prompted with a long HHH context, distilled into the same model without it."""
