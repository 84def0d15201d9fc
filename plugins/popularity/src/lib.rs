// placeholder: written by the plugins helper
