"""Ray job entrypoint for the `align_sft` workflow:

    ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env ray_jobs/runtime_env.yaml -- python -m ray_jobs.align_sft --config FILE [key=value ...]
"""

from ray_jobs._entry import run

if __name__ == "__main__":
    run("align_sft")
