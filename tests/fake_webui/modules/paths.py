models_path = "models"  # tests point this at a temporary folder
