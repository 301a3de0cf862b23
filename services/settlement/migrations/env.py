from serviceloop.migrate import run_env

run_env("settlement")
