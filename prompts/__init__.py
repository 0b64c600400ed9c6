"""User-editable prompt templates (NAME.vN.j2). See README "Prompt experiments"."""
