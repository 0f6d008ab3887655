"""Crystal maths shared by the TDS plugins: lattices, goniometer geometry, symmetry."""
