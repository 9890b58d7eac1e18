print("fuzz target")
