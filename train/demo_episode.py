"""Play TemplateSearch episodes and save what happened as a PNG strip or a GIF.

    python train/demo_episode.py                                  # random windows, Cluttered MNIST
    python train/demo_episode.py --env-id TemplateSearch-MixedMNIST-v0 --out demo.gif
    python train/demo_episode.py --policy oracle                  # steer to the target (privileged)

``--policy random`` samples actions; ``--policy oracle`` reads the privileged target box and
places the window on it, which shows what a perfect search looks like. Neither is a trained
agent: they exist to look at the environment.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import matchenv
from matchenv.agents.teacher import env_target_action
from matchenv.rendering import save_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="TemplateSearch-v0", choices=sorted(matchenv.ENV_IDS))
    parser.add_argument("--policy", default="random", choices=["random", "oracle"])
    parser.add_argument("--episodes", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/demo_episode.png", help="a .png (strip of steps) or .gif path")
    args = parser.parse_args()

    env = gym.make(args.env_id, render_mode="rgb_array", action_type="absolute")
    env.action_space.seed(args.seed)
    frames = []
    for episode in range(args.episodes):
        env.reset(seed=args.seed + episode)
        frames.append(env.render())
        terminated = False
        while not terminated:
            action = env.action_space.sample() if args.policy == "random" else env_target_action(env)
            _, reward, terminated, _, info = env.step(action)
            frames.append(env.render())
        print(f"episode {episode}: final IoU {info['iou']:.2f}, reward {reward}, success {info['is_success']}")
    path = save_frames(frames, args.out)
    print(f"saved {len(frames)} frames to {path}  (data: {env.unwrapped.dataset.source})")


if __name__ == "__main__":
    main()
