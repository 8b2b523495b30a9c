"""The bundled teacher, built-in example networks and the demo pipeline."""
