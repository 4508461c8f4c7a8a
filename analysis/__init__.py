"""Analysis: saved run artifacts -> measurements, tables and figures (pure maths; never trains)."""
