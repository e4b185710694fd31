"""Ray job entrypoint for the `dpo` workflow:

    ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env ray_jobs/runtime_env.yaml -- python -m ray_jobs.dpo --config FILE [key=value ...]
"""

from ray_jobs._entry import run

if __name__ == "__main__":
    run("dpo")
