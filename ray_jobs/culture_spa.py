"""Ray job entrypoint for the `culture_spa` workflow:

    ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env ray_jobs/runtime_env.yaml -- python -m ray_jobs.culture_spa --config FILE [key=value ...]
"""

from ray_jobs._entry import run

if __name__ == "__main__":
    run("culture_spa")
