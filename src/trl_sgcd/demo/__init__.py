"""The bundled offline demo (`trl-sgcd demo`): warm start -> evaluation -> SGCD -> evaluation."""
